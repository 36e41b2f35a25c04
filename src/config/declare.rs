//! The `settings!` macro: from the table in [`super::settings`] it writes the resolved
//! structs ([`super::Config`], [`super::ServiceSettings`]), their partial forms with merge
//! and defaults, the clap flags ([`super::Flags`]), the reading of each TOML key, and the
//! list the wiring test walks. Why a macro: see the docs of [`crate::config`].
//!
//! A table entry is
//!
//! ```text
//! /// Help text (also the field's doc)
//! SCOPE NAME: TYPE { KIND ..., arg(CLAP ARGS), example "VALUE" }
//! ```
//!
//! SCOPE is `process` (one value for the whole balancer: a field of `Config`) or `service`
//! (a field of `ServiceSettings`, which a service inherits from the top level). KIND says
//! how a value is given and merged:
//!
//! - `one = DEFAULT, parse = FN`: a single value; `Config` holds `TYPE`.
//! - `maybe, parse = FN`: a single value with no default; `Config` holds `Option<TYPE>`.
//! - `list = DEFAULT, [key = "K",] parse = FN, file = SEED`: a repeatable flag; the file's
//!   value is read by `SEED(key)`; `Config` holds `Vec<TYPE>`. A given list replaces the
//!   one under it whole.
//! - `switch = DEFAULT, flags = TYPE`: an on/off pair of flags (a flattened clap struct
//!   implementing [`super::flags::Switch`]); a TOML boolean.
//!
//! FN parses the text of the flag and of the TOML value alike (see [`super::file`]). The
//! TOML key is NAME unless `key` says otherwise; the long flag is whatever `arg(...)` makes
//! clap derive (NAME in kebab case by default). `example` is a value other than the
//! default, which the wiring test gives as a flag and as a file key.
//!
//! Internals: entries are munched one at a time (`@entry`) into four accumulators: the
//! flag fields, every entry, the process entries and the service entries (`@scope`);
//! `@emit` then writes the items. Expressions that name local variables are only written
//! in `@emit` (macro hygiene), through the small `@cfg_ty`/`@apply`/... helpers.

macro_rules! settings {
    // ---- one entry: render its flag field, then file it by scope ----------------------
    (@entry [$($flags:tt)*] $all:tt $proc:tt $svc:tt
        $(#[$meta:meta])* $scope:ident $name:ident: $ty:ty {
            one = $default:expr, parse = $parse:path, arg($($arg:tt)*), example $ex:literal $(,)?
        }
        $($rest:tt)*
    ) => {
        settings!(@scope
            [$($flags)* $(#[$meta])* #[arg(value_parser = $parse, $($arg)*)] pub $name: Option<$ty>,]
            $all $proc $svc
            { $scope $name one ($ty) ($default) [$(#[$meta])*] (stringify!($name)) ($parse) () () () ($ex) }
            $($rest)*
        );
    };
    (@entry [$($flags:tt)*] $all:tt $proc:tt $svc:tt
        $(#[$meta:meta])* $scope:ident $name:ident: $ty:ty {
            maybe, parse = $parse:path, arg($($arg:tt)*), example $ex:literal $(,)?
        }
        $($rest:tt)*
    ) => {
        settings!(@scope
            [$($flags)* $(#[$meta])* #[arg(value_parser = $parse, $($arg)*)] pub $name: Option<$ty>,]
            $all $proc $svc
            { $scope $name maybe ($ty) (None) [$(#[$meta])*] (stringify!($name)) ($parse) () () () ($ex) }
            $($rest)*
        );
    };
    (@entry [$($flags:tt)*] $all:tt $proc:tt $svc:tt
        $(#[$meta:meta])* $scope:ident $name:ident: $ty:ty {
            list = $default:expr, $(key = $key:literal,)? parse = $parse:path, file = $file:expr,
            arg($($arg:tt)*), example $ex:literal $(, toml $toml:literal)? $(,)?
        }
        $($rest:tt)*
    ) => {
        settings!(@scope
            [$($flags)* $(#[$meta])* #[arg(value_parser = $parse, $($arg)*)] pub $name: Vec<$ty>,]
            $all $proc $svc
            { $scope $name list ($ty) ($default) [$(#[$meta])*] (settings!(@key $name $($key)?))
              ($parse) ($file) ($($toml)?) () ($ex) }
            $($rest)*
        );
    };
    (@entry [$($flags:tt)*] $all:tt $proc:tt $svc:tt
        $(#[$meta:meta])* $scope:ident $name:ident: $ty:ty {
            switch = $default:expr, flags = $flag_ty:ty,
            example $ex:literal, toml $toml:literal, args [$($ex_arg:literal),*] $(,)?
        }
        $($rest:tt)*
    ) => {
        settings!(@scope
            [$($flags)* #[command(flatten)] pub $name: $flag_ty,]
            $all $proc $svc
            { $scope $name switch ($ty) ($default) [$(#[$meta])*] (stringify!($name))
              () () ($toml) ($($ex_arg),*) ($ex) }
            $($rest)*
        );
    };
    // All entries munched.
    (@entry $flags:tt $all:tt $proc:tt $svc:tt) => {
        settings!(@emit $flags $all $proc $svc);
    };

    (@scope $flags:tt [$($all:tt)*] [$($proc:tt)*] $svc:tt
        { process $name:ident $($rec:tt)* } $($rest:tt)*
    ) => {
        settings!(@entry $flags [$($all)* { process $name $($rec)* }]
            [$($proc)* { $name $($rec)* }] $svc $($rest)*);
    };
    (@scope $flags:tt [$($all:tt)*] $proc:tt [$($svc:tt)*]
        { service $name:ident $($rec:tt)* } $($rest:tt)*
    ) => {
        settings!(@entry $flags [$($all)* { service $name $($rec)* }]
            $proc [$($svc)* { $name $($rec)* }] $($rest)*);
    };

    // ---- the items ------------------------------------------------------------------
    (@emit
        [$($flags:tt)*]
        [$({ $scope:ident $name:ident $kind:ident ($ty:ty) ($default:expr) [$(#[$meta:meta])*]
             ($key:expr) ($($parse:path)?) ($($file:expr)?) ($($toml:literal)?)
             ($($ex_arg:literal),*) ($ex:literal) })*]
        [$({ $pname:ident $pkind:ident ($pty:ty) ($pdefault:expr) [$(#[$pmeta:meta])*]
             $($_p:tt)* })*]
        [$({ $sname:ident $skind:ident ($sty:ty) ($sdefault:expr) [$(#[$smeta:meta])*]
             ($skey:expr) ($($sparse:path)?) ($($sfile:expr)?) $($_s:tt)* })*]
    ) => {
        /// A service's settings, resolved: what a service that inherits the top-level
        /// settings (and overrides some) runs with.
        #[derive(Debug, Clone, PartialEq)]
        pub struct ServiceSettings {
            $( $(#[$smeta])* pub $sname: settings!(@cfg_ty $skind $sty), )*
        }

        impl Default for ServiceSettings {
            /// The documented defaults.
            fn default() -> Self {
                ServiceSettings { $( $sname: settings!(@default $skind ($sdefault)), )* }
            }
        }

        /// [`ServiceSettings`] with every setting optional: what one source said.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct PartialServiceSettings {
            $( pub $sname: settings!(@partial_ty $skind $sty), )*
        }

        impl PartialServiceSettings {
            /// `top` wins wherever it says something; lists are replaced whole.
            pub fn overlay(self, top: PartialServiceSettings) -> PartialServiceSettings {
                PartialServiceSettings { $( $sname: top.$sname.or(self.$sname), )* }
            }

            /// These settings, with `defaults` filling in what they leave unsaid (a service
            /// inheriting the top-level settings): `defaults.overlay(self)`.
            pub fn inheriting(self, defaults: PartialServiceSettings) -> PartialServiceSettings {
                defaults.overlay(self)
            }

            /// `base` with every setting this says replaced.
            pub fn apply_to(self, base: ServiceSettings) -> ServiceSettings {
                ServiceSettings {
                    $( $sname: settings!(@apply $skind (self.$sname) (base.$sname)), )*
                }
            }

            /// Reads the value of file key `key` if it is a service setting (a key of a
            /// `[[service]]` table); `false` if it is not one.
            pub(crate) fn read_file_value<'de, A: ::serde::de::MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<bool, A::Error> {
                $(
                    if key == $skey {
                        let value = map.next_value_seed(
                            settings!(@seed $skind ($sty) ($skey) ($($sparse)?) ($($sfile)?))
                        )?;
                        self.$sname = Some(value);
                        return Ok(true);
                    }
                )*
                Ok(false)
            }

            /// The names of the settings this says something about.
            pub fn given(&self) -> Vec<&'static str> {
                let mut out = Vec::new();
                $( if self.$sname.is_some() { out.push($skey); } )*
                out
            }
        }

        /// The keys of a `[[service]]` table, in the order an unknown key's error lists them.
        pub(crate) const SERVICE_TABLE_KEYS: &[&str] = &["name", "max_conns", $($skey),*];

        /// Everything a running balancer needs. Built by [`load`](crate::config::load),
        /// never by hand outside tests.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Config {
            $( $(#[$pmeta])* pub $pname: settings!(@cfg_ty $pkind $pty), )*
            /// The top-level service settings: the one service of a configuration without
            /// `[[service]]` tables, or the defaults those tables inherit.
            pub service: ServiceSettings,
            /// The `[[service]]` tables, resolved (inheritance applied). Empty: the one
            /// service `default` that `service` describes (see [`Config::services`]).
            pub services: Vec<$crate::config::services::ServiceConfig>,
            /// The file the configuration came from, if any (reload re-reads it).
            pub config_file: Option<::std::path::PathBuf>,
            /// The values given as command-line flags: a reload re-reads the file and lays
            /// these over it again, so a flag keeps overriding the file after SIGHUP.
            pub overrides: PartialConfig,
        }

        impl Default for Config {
            /// The documented defaults (README "Flags") with no backends.
            fn default() -> Self {
                Config {
                    $( $pname: settings!(@default $pkind ($pdefault)), )*
                    service: ServiceSettings::default(),
                    services: Vec::new(),
                    config_file: None,
                    overrides: PartialConfig::default(),
                }
            }
        }

        /// A configuration with every setting optional: what a TOML file or the command
        /// line said, before defaults. `overlay` merges two of them, `apply_to` fills a
        /// [`Config`].
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct PartialConfig {
            $( pub $pname: settings!(@partial_ty $pkind $pty), )*
            pub service: PartialServiceSettings,
            /// The file's `[[service]]` tables, unresolved; `None` when it has none.
            pub services: Option<Vec<$crate::config::services::PartialService>>,
        }

        impl PartialConfig {
            /// `top` wins wherever it says something. Lists are replaced whole, not
            /// appended: `--backend` on the command line means "these backends", not
            /// "these as well".
            pub fn overlay(self, top: PartialConfig) -> PartialConfig {
                PartialConfig {
                    $( $pname: top.$pname.or(self.$pname), )*
                    service: self.service.overlay(top.service),
                    services: top.services.or(self.services),
                }
            }

            /// `base` with every setting this says replaced.
            pub fn apply_to(self, base: Config) -> Config {
                Config {
                    $( $pname: settings!(@apply $pkind (self.$pname) (base.$pname)), )*
                    service: self.service.apply_to(base.service),
                    services: base.services,
                    config_file: base.config_file,
                    overrides: base.overrides,
                }
            }

            /// Reads the value of file key `key` into this (see [`crate::config::file`]).
            pub(crate) fn read_file_value<'de, A: ::serde::de::MapAccess<'de>>(
                &mut self,
                key: &str,
                map: &mut A,
            ) -> Result<(), A::Error> {
                let p = self;
                if key == "service" {
                    let tables = map.next_value_seed($crate::config::services::ServiceTables)?;
                    p.services = Some(tables);
                    return Ok(());
                }
                $(
                    if key == $key {
                        let value = map.next_value_seed(
                            settings!(@seed $kind ($ty) ($key) ($($parse)?) ($($file)?))
                        )?;
                        settings!(@set $scope p.$name = Some(value));
                        return Ok(());
                    }
                )*
                Err(::serde::de::Error::unknown_field(key, FILE_KEYS))
            }
        }

        /// Every TOML key, in the order an unknown key's error lists them.
        pub(crate) const FILE_KEYS: &[&str] = &[$($key,)* "service"];

        /// The command-line flags that are settings (`--config` and `--check` are not).
        /// Every flag is optional here (no clap defaults) so that "given on the command
        /// line" is visible: only given flags override the file.
        #[derive(::clap::Args, Debug)]
        #[group(skip)]
        pub struct Flags {
            $($flags)*
        }

        impl Flags {
            /// The flags that were given, as overrides for the file.
            pub fn into_partial(self) -> PartialConfig {
                let flags = self;
                let mut p = PartialConfig::default();
                $( settings!(@set $scope p.$name = settings!(@given $kind (flags.$name))); )*
                p
            }
        }

        /// One declared setting, for the wiring test.
        #[cfg(test)]
        pub(crate) struct Declared {
            pub name: &'static str,
            pub key: &'static str,
            /// A valid value other than the default, as flag text.
            pub example: &'static str,
            /// The example as a TOML value, when it is not the quoted text.
            pub example_toml: Option<&'static str>,
            /// The example as command-line arguments, when it is not `--FLAG TEXT`.
            pub example_args: &'static [&'static str],
        }

        #[cfg(test)]
        pub(crate) const DECLARED: &[Declared] = &[$(
            Declared {
                name: stringify!($name),
                key: $key,
                example: $ex,
                example_toml: settings!(@opt $($toml)?),
                example_args: &[$($ex_arg),*],
            },
        )*];

        /// The names of the settings whose values differ between `a` and `b`.
        #[cfg(test)]
        pub(crate) fn differing(a: &Config, b: &Config) -> Vec<&'static str> {
            let mut out = Vec::new();
            $(
                if settings!(@get $scope a.$name) != settings!(@get $scope b.$name) {
                    out.push(stringify!($name));
                }
            )*
            out
        }
    };

    // ---- helpers, by kind and scope -------------------------------------------------
    (@key $name:ident) => { stringify!($name) };
    (@key $name:ident $key:literal) => { $key };
    (@opt) => { None };
    (@opt $v:literal) => { Some($v) };

    (@cfg_ty maybe $ty:ty) => { Option<$ty> };
    (@cfg_ty list $ty:ty) => { Vec<$ty> };
    (@cfg_ty $kind:ident $ty:ty) => { $ty };

    (@partial_ty list $ty:ty) => { Option<Vec<$ty>> };
    (@partial_ty $kind:ident $ty:ty) => { Option<$ty> };

    (@default $kind:ident ($default:expr)) => { $default };

    (@apply maybe ($given:expr) ($base:expr)) => { $given.or($base) };
    (@apply $kind:ident ($given:expr) ($base:expr)) => { $given.unwrap_or($base) };

    (@given list ($flag:expr)) => { $crate::config::flags::non_empty($flag) };
    (@given switch ($flag:expr)) => { $crate::config::flags::Switch::given(&$flag) };
    (@given $kind:ident ($flag:expr)) => { $flag };

    (@seed switch ($ty:ty) ($key:expr) () ()) => { ::std::marker::PhantomData::<$ty> };
    (@seed list ($ty:ty) ($key:expr) ($parse:path) ($file:expr)) => { ($file)($key) };
    (@seed $kind:ident ($ty:ty) ($key:expr) ($parse:path) ()) => {
        $crate::config::file::Scalar::new($key, $parse)
    };

    (@set process $p:ident . $name:ident = $value:expr) => { $p.$name = $value; };
    (@set service $p:ident . $name:ident = $value:expr) => { $p.service.$name = $value; };
    (@get process $c:ident . $name:ident) => { $c.$name };
    (@get service $c:ident . $name:ident) => { $c.service.$name };

    // An entry that matches no kind above (or a misspelt helper): say so rather than
    // recursing into the entry point.
    (@ $($unmatched:tt)*) => {
        compile_error!(concat!(
            "settings!: no rule matches: ",
            stringify!($($unmatched)*)
        ));
    };

    // ---- entry point ------------------------------------------------------------------
    ($($entries:tt)*) => {
        settings!(@entry [] [] [] [] $($entries)*);
    };
}

pub(crate) use settings;
