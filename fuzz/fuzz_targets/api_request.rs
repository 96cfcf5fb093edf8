#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| appliance::testing::fuzzing::api_request(data));
