use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: a full cache is a few long-lived allocations per
/// stored answer among the short-lived buffers of every request, and glibc's per-thread arenas
/// leave the holes of the short-lived ones resident (benches/cache_memory, 100 000 answers:
/// about 1 460 resident bytes per answer with glibc, 1 150 with mimalloc, for 1 080 live).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    wikigate::cli::run(wikigate::cli::Cli::parse())
}
