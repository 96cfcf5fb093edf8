#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| appliance::fuzzing::api_request(data));
