//! What the command line needs beyond the generated [`super::Flags`]: on/off flag pairs and
//! "a repeatable flag given zero times says nothing".

/// An on/off pair of flags (`--pin`/`--no-pin`): the setting's value if either was given.
pub trait Switch {
    fn given(&self) -> Option<bool>;
}

/// `--pin` / `--no-pin`; the last one given wins.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
#[group(skip)]
pub struct PinFlags {
    /// Pin each worker to one CPU (the default)
    #[arg(long, overrides_with = "no_pin")]
    pin: bool,

    /// Do not pin workers to CPUs
    #[arg(long, overrides_with = "pin")]
    no_pin: bool,
}

impl Switch for PinFlags {
    fn given(&self) -> Option<bool> {
        match (self.pin, self.no_pin) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }
}

/// A repeatable flag given zero times says nothing (the file's list stands).
pub fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    if v.is_empty() {
        None
    } else {
        Some(v)
    }
}
