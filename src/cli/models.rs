//! `kintsugi models`

use crate::models::registry::{Availability, Registry};

/// Arguments of `models`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints every model with its family and whether it can run.
pub fn run(_args: Args) -> anyhow::Result<()> {
    let registry = Registry::default();
    println!(
        "device: {}",
        crate::engine::device::device_label(crate::engine::available_cores())
    );
    println!("{:<14} {:<10} {:<11} description", "id", "family", "status");
    for m in registry.list() {
        let status = match &m.availability {
            Availability::Available => "available".to_owned(),
            Availability::Unavailable(_) => "unavailable".to_owned(),
        };
        println!(
            "{:<14} {:<10} {:<11} {}",
            m.id,
            m.family.name(),
            status,
            m.description
        );
        if let Availability::Unavailable(why) = &m.availability {
            println!("{:<14} {:<10} {:<11} why: {}", "", "", "", why);
        }
    }
    println!("\ndamage detectors (kintsugi detect --detector ...):");
    for (id, description, availability) in registry.detectors() {
        let status = match &availability {
            Availability::Available => "available",
            Availability::Unavailable(_) => "unavailable",
        };
        println!(
            "{:<14} {:<10} {:<11} {}",
            id, "detector", status, description
        );
        if let Availability::Unavailable(why) = &availability {
            println!("{:<14} {:<10} {:<11} why: {}", "", "", "", why);
        }
    }
    Ok(())
}
