//! The `pochi` binary.

fn main() -> std::process::ExitCode {
    pochi::cli::main()
}
