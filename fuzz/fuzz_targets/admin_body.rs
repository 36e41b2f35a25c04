#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| uringlb::fuzzing::admin_body(data));
