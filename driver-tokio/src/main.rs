//! `porter`: the relay on tokio. Not wired up yet.

fn main() {
    eprintln!("porter: the tokio driver is not implemented yet");
    std::process::exit(2);
}
