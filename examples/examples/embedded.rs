//! Embedding sextant's registry in a process: open the durable embedded store, register
//! instances (one persistent, one on a lease), follow changes, read snapshots.
//!
//! Run: `cargo run -p sextant-examples --example embedded`

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use sextant_core::{Change, Instance, Record, Revision, Scope, ServiceKey};
use sextant_store::{EmbeddedOptions, EmbeddedStore, Registry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(dir.path(), EmbeddedOptions::default())?;
    let registry = Registry::start(store, 1024).await?;
    let orders = ServiceKey::parse("shop/backend/orders")?;

    // A gateway keeps a handle per upstream: reading it is one atomic load.
    let handle = registry.handle(&orders);
    let mut changes = registry.subscribe(Scope::Service(orders.clone()), Revision(0));

    let mut db = Instance::new(orders.clone(), "127.0.0.1".parse()?, 5432);
    db.ephemeral = false;
    db.zone = "zone-a".into();
    registry.put(Record::Instance(Arc::new(db)), None).await?;

    let lease = registry.grant_lease(Duration::from_millis(500)).await?;
    let worker = Instance::new(orders.clone(), "127.0.0.1".parse()?, 8080);
    registry.put(Record::Instance(Arc::new(worker)), Some(lease)).await?;
    println!("{} instances of {orders}", handle.load().instances.len());

    // Nobody keeps the lease alive: the worker expires and the watcher sees it go.
    for _ in 0..3 {
        let Some(event) = changes.next().await else { break };
        match &event.change {
            Change::Upsert { record } => println!("rev {}: upsert {}", event.revision, record.key()),
            Change::Remove { key } => println!("rev {}: remove {key} (lease expired)", event.revision),
            Change::Reset { snapshot } => println!("rev {}: reset, {} records", event.revision, snapshot.records.len()),
        }
    }
    println!(
        "{} instance(s) left: {:?}",
        handle.load().instances.len(),
        handle.load().instances.iter().map(|i| i.id.to_string()).collect::<Vec<_>>()
    );
    Ok(())
}
