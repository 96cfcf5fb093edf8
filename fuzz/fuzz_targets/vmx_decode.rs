#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| guestinfo::fuzzing::vmx_decode(data));
