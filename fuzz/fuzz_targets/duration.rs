#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| uringlb::fuzzing::duration(data));
