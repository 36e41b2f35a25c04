//! `user_data` encoding: which slot an operation belongs to, the slot's generation when it
//! was submitted, and what the operation was. A completion whose generation no longer
//! matches its slot belongs to an earlier connection and is ignored.

use crate::direction::Dir;

/// What an operation was; the top byte of `user_data`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Accept; slot = listener index.
    Accept,
    /// Read of the worker's eventfd.
    Wake,
    /// The timer wheel's repeating timeout.
    Tick,
    /// Completions nobody waits for (close, cancel).
    Ignore,
    Connect,
    ConnectTimeout,
    /// Receive from the source of a direction.
    Recv(Dir),
    /// Send to the destination of a direction.
    Send(Dir),
    /// `shutdown(SHUT_WR)` of a direction's destination.
    Shutdown(Dir),
    /// Splice mode: wait for the source of a direction to be readable.
    PollIn(Dir),
    /// Splice socket -> pipe, and pipe -> socket, per direction.
    SpliceIn(Dir),
    SpliceOut(Dir),
    /// A poll linked ahead of a splice: counted, but its splice reports the outcome.
    LinkedPoll,
    /// A UDP listener's multishot receive; slot = UDP listener index.
    UdpListen,
    /// A UDP flow's multishot receive from its backend; slot = flow id.
    UdpBackend,
}

impl OpKind {
    /// The code in `user_data`: below 64, so the ring's two tag bits stay clear.
    fn code(self) -> u8 {
        let d = |dir: Dir| dir.index() as u8;
        match self {
            OpKind::Accept => 1,
            OpKind::Wake => 2,
            OpKind::Tick => 3,
            OpKind::Ignore => 4,
            OpKind::Connect => 10,
            OpKind::ConnectTimeout => 11,
            OpKind::Recv(dir) => 12 + d(dir),
            OpKind::Send(dir) => 14 + d(dir),
            OpKind::Shutdown(dir) => 16 + d(dir),
            OpKind::PollIn(dir) => 18 + d(dir),
            OpKind::SpliceIn(dir) => 20 + d(dir),
            OpKind::SpliceOut(dir) => 22 + d(dir),
            OpKind::LinkedPoll => 24,
            OpKind::UdpListen => 25,
            OpKind::UdpBackend => 26,
        }
    }

    fn from_code(v: u8) -> Option<OpKind> {
        let dir = if v.is_multiple_of(2) {
            Dir::Up
        } else {
            Dir::Down
        };
        Some(match v {
            1 => OpKind::Accept,
            2 => OpKind::Wake,
            3 => OpKind::Tick,
            4 => OpKind::Ignore,
            10 => OpKind::Connect,
            11 => OpKind::ConnectTimeout,
            12 | 13 => OpKind::Recv(dir),
            14 | 15 => OpKind::Send(dir),
            16 | 17 => OpKind::Shutdown(dir),
            18 | 19 => OpKind::PollIn(dir),
            20 | 21 => OpKind::SpliceIn(dir),
            22 | 23 => OpKind::SpliceOut(dir),
            24 => OpKind::LinkedPoll,
            25 => OpKind::UdpListen,
            26 => OpKind::UdpBackend,
            _ => return None,
        })
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
        (u64::from(self.op.code()) << 56)
            | (u64::from(self.gen & GEN_MASK) << 32)
            | u64::from(self.slot)
    }

    /// `None` for user data this worker never produced.
    pub fn decode(v: u64) -> Option<Token> {
        let op = OpKind::from_code((v >> 56) as u8)?;
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
            OpKind::Recv(Dir::Down),
            OpKind::Shutdown(Dir::Up),
            OpKind::SpliceOut(Dir::Down),
            OpKind::ConnectTimeout,
            OpKind::LinkedPoll,
            OpKind::UdpListen,
            OpKind::UdpBackend,
        ] {
            let t = Token::new(123_456, 0xfff_fff, op);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(u64::MAX), None);
        assert_eq!(next_gen(GEN_MASK), 0);
    }
}
