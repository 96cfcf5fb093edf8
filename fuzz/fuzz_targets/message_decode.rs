#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| wire::fuzzing::message_decode(data));
