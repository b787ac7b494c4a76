//! `porter-smol`: the relay on smol. Not wired up yet.

fn main() {
    eprintln!("porter: the smol driver is not implemented yet");
    std::process::exit(2);
}
