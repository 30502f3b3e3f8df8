use std::process::ExitCode;

use clap::Parser;

/// mimalloc rather than glibc's malloc: a full cache is a few long-lived allocations per
/// stored answer among the short-lived buffers of every request, and glibc's per-thread arenas
/// leave the holes of the short-lived ones resident (benches/cache_memory: resident memory
/// per stored answer 1 462 bytes with glibc, see README's performance section for mimalloc's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    wikigate::cli::run(wikigate::cli::Cli::parse())
}
