#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lattice_metaserver::fuzzing::commands(data));
