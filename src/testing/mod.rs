//! Test machinery, compiled only for the crate's own tests or with the doc-hidden `__testing`
//! feature (which `kvctl` and `fuzz/` enable): never part of a user's build.
//!
//! - [`sim`]: the simulated disk that keeps the page cache apart from the disk, so that a test can
//!   cut the power at any operation and keep any subset of the unsynced writes.
//! - `faulty` (tests only): a wrapper over the real file system that fails chosen operations.
//! - [`campaign`]: the seeded power-loss campaign over the simulated disk.
//! - [`fuzz`]: what the fuzz targets run.
//! - [`rng`]: the one pseudo-random generator of the test code.
//! - `crash_tests` (tests only): the power-loss, fault and corruption campaigns `cargo test` runs.

pub(crate) mod campaign;
#[cfg(test)]
mod crash_tests;
#[cfg(test)]
pub(crate) mod faulty;
pub(crate) mod fuzz;
pub(crate) mod rng;
pub(crate) mod sim;

/// The names in a real directory, sorted (for the unit tests' checks of which files exist).
#[cfg(test)]
pub(crate) fn file_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
