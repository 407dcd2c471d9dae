fn main() -> std::process::ExitCode {
    quietus::cli::main()
}
