//! `user_data` encoding: which slot an operation belongs to, the slot's generation when it
//! was submitted, and what the operation was. A completion whose generation no longer
//! matches its slot belongs to an earlier connection and is ignored.

/// What an operation was; the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// Multishot accept; slot = listener index.
    Accept = 1,
    /// Read of the worker's eventfd.
    Wake = 2,
    /// The timer wheel's repeating timeout.
    Tick = 3,
    /// Completions nobody waits for (close, cancel).
    Ignore = 4,
    Connect = 10,
    ConnectTimeout = 11,
    /// Receive for a direction (0: from client, 1: from backend).
    Recv0 = 12,
    Recv1 = 13,
    /// Send for a direction (0: to backend, 1: to client).
    Send0 = 14,
    Send1 = 15,
    /// Shutdown(SHUT_WR) of a direction's destination.
    Shutdown0 = 16,
    Shutdown1 = 17,
    /// Splice mode: wait for the source of a direction to be readable.
    PollIn0 = 18,
    PollIn1 = 19,
    /// Splice socket -> pipe, and pipe -> socket, per direction.
    SpliceIn0 = 20,
    SpliceIn1 = 21,
    SpliceOut0 = 22,
    SpliceOut1 = 23,
    /// A poll linked ahead of a splice: counted, but its splice reports the outcome.
    LinkedPoll = 24,
}

impl OpKind {
    fn from_u8(v: u8) -> Option<OpKind> {
        use OpKind::*;
        Some(match v {
            1 => Accept,
            2 => Wake,
            3 => Tick,
            4 => Ignore,
            10 => Connect,
            11 => ConnectTimeout,
            12 => Recv0,
            13 => Recv1,
            14 => Send0,
            15 => Send1,
            16 => Shutdown0,
            17 => Shutdown1,
            18 => PollIn0,
            19 => PollIn1,
            20 => SpliceIn0,
            21 => SpliceIn1,
            22 => SpliceOut0,
            23 => SpliceOut1,
            24 => LinkedPoll,
            _ => return None,
        })
    }

    /// The direction a per-direction operation belongs to.
    pub fn dir(self) -> Option<usize> {
        use OpKind::*;
        match self {
            Recv0 | Send0 | Shutdown0 | PollIn0 | SpliceIn0 | SpliceOut0 => Some(0),
            Recv1 | Send1 | Shutdown1 | PollIn1 | SpliceIn1 | SpliceOut1 => Some(1),
            _ => None,
        }
    }

    fn pick(dir: usize, zero: OpKind, one: OpKind) -> OpKind {
        if dir == 0 {
            zero
        } else {
            one
        }
    }

    pub fn poll_in(dir: usize) -> OpKind {
        Self::pick(dir, OpKind::PollIn0, OpKind::PollIn1)
    }
    pub fn splice_in(dir: usize) -> OpKind {
        Self::pick(dir, OpKind::SpliceIn0, OpKind::SpliceIn1)
    }
    pub fn splice_out(dir: usize) -> OpKind {
        Self::pick(dir, OpKind::SpliceOut0, OpKind::SpliceOut1)
    }

    pub fn recv(dir: usize) -> OpKind {
        Self::pick(dir, OpKind::Recv0, OpKind::Recv1)
    }
    pub fn send(dir: usize) -> OpKind {
        Self::pick(dir, OpKind::Send0, OpKind::Send1)
    }
    pub fn shutdown(dir: usize) -> OpKind {
        Self::pick(dir, OpKind::Shutdown0, OpKind::Shutdown1)
    }
}

/// Generations wrap at 24 bits; a slot would need 16 million reuses while one stale
/// completion is still queued for it to be confused.
const GEN_MASK: u32 = 0x00ff_ffff;

/// Decoded `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub slot: u32,
    pub gen: u32,
    pub op: OpKind,
}

impl Token {
    pub fn new(slot: usize, gen: u32, op: OpKind) -> Token {
        Token {
            slot: slot as u32,
            gen: gen & GEN_MASK,
            op,
        }
    }

    pub fn encode(self) -> u64 {
        (u64::from(self.op as u8) << 56)
            | (u64::from(self.gen & GEN_MASK) << 32)
            | u64::from(self.slot)
    }

    /// `None` for user data this worker never produced.
    pub fn decode(v: u64) -> Option<Token> {
        let op = OpKind::from_u8((v >> 56) as u8)?;
        Some(Token {
            slot: v as u32,
            gen: ((v >> 32) as u32) & GEN_MASK,
            op,
        })
    }
}

/// The next generation of a slot.
pub fn next_gen(gen: u32) -> u32 {
    (gen + 1) & GEN_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for op in [
            OpKind::Accept,
            OpKind::Recv1,
            OpKind::Shutdown0,
            OpKind::ConnectTimeout,
        ] {
            let t = Token::new(123_456, 0xfff_fff, op);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(u64::MAX), None);
        assert_eq!(next_gen(GEN_MASK), 0);
    }
}
