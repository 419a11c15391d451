//! The `stompline` binary; everything lives in the library.

fn main() -> std::process::ExitCode {
    stompline::cli::main()
}
