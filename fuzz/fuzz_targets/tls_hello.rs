#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| uringlb::fuzzing::tls_hello(data));
