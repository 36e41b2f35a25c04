//! The names of the balancing algorithms and of the hashing key, as the configuration
//! spells them. Pure data: the algorithms themselves are the sibling modules.

/// Which algorithm a service balances with (`--algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    Random,
    WeightedRandom,
    LeastConn,
    P2c,
    LeastTime,
    SourceHash,
    Maglev,
    RingHash,
}

impl Algorithm {
    /// Every algorithm with its `--algorithm` name.
    pub const ALL: [(&'static str, Algorithm); 10] = [
        ("round-robin", Algorithm::RoundRobin),
        ("weighted-round-robin", Algorithm::WeightedRoundRobin),
        ("random", Algorithm::Random),
        ("weighted-random", Algorithm::WeightedRandom),
        ("least-conn", Algorithm::LeastConn),
        ("p2c", Algorithm::P2c),
        ("least-time", Algorithm::LeastTime),
        ("source-hash", Algorithm::SourceHash),
        ("maglev", Algorithm::Maglev),
        ("ring-hash", Algorithm::RingHash),
    ];

    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// Whether its choice depends on the client's address (the hashing algorithms).
    pub fn hashes_client(self) -> bool {
        matches!(
            self,
            Algorithm::SourceHash | Algorithm::Maglev | Algorithm::RingHash
        )
    }

    pub fn from_name(s: &str) -> Option<Algorithm> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, a)| *a)
    }
}

/// What the hashing algorithms hash (`--hash-key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    SourceIp,
    SourceIpPort,
}

/// Largest Maglev table (`--maglev-table-size`): 16 Mi entries of 4 bytes.
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 16_777_216;
