//! Any text as the retention policy file beside the shipped data maps: loaded or
//! refused with problems, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let files = quietus::policy::EXAMPLES
        .iter()
        .map(|(name, shipped)| quietus::policy::SourceFile {
            name: (*name).to_owned(),
            text: if *name == "retention.toml" {
                text.to_owned()
            } else {
                (*shipped).to_owned()
            },
        })
        .collect();
    let _ = quietus::policy::Policies::from_files(files);
});
