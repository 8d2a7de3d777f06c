//! Rebuilds the crate when a migration changes: `sqlx::migrate!` embeds the files at build
//! time, and Cargo does not otherwise know the crate depends on them.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
