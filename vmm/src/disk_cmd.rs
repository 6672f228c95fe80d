//! `rehost disk ...`: create, inspect, check, convert, compare, commit and
//! benchmark disk images.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Show format, size and the parent chain of an image.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// The image file.
        path: std::path::PathBuf,
    },
}

/// Runs a disk subcommand and returns the process exit code.
pub fn execute(cmd: DiskCommand) -> anyhow::Result<u8> {
    match cmd {
        DiskCommand::Info { json: _, path } => {
            let image = rehost_disk::open(&path, &rehost_disk::OpenOptions { read_only: true })?;
            let info = image.info();
            println!("image: {}", info.path.display());
            println!("file format: {}", info.format.name());
            println!("virtual size: {}", info.virtual_size);
            Ok(0)
        }
    }
}
