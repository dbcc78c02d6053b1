fn main() -> std::process::ExitCode {
    livesession::cli::main()
}
