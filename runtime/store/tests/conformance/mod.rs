//! Checks every store must pass, run by each store's tests on its own backend.

use std::sync::Arc;

use sextant_core::store::{Store, StoreError};
use sextant_core::{ConfigEntry, ConfigKey, Record};

fn config(content: &str) -> Record {
    Record::Config(Arc::new(ConfigEntry::new(ConfigKey::parse("shop/web/orders.json").unwrap(), content).unwrap()))
}

/// `put_if` writes only over the revision it names (or into an absent key), refuses anything
/// else naming the write it lost to and changes nothing; `get` reads the revision it compares.
pub(crate) async fn conditional_writes<S: Store>(store: &S) {
    let key = config("").key();
    assert!(store.get(key.clone()).await.unwrap().is_none());
    let first = store.put_if(config("a"), None).await.expect("into an absent key");
    let (read, at) = store.get(key.clone()).await.unwrap().expect("written");
    assert_eq!((read, at), (config("a"), first));
    match store.put_if(config("b"), None).await {
        Err(StoreError::Conflict { key: k, expected: None, current: Some(c) }) => {
            assert_eq!((*k, c), (key.clone(), first))
        }
        other => panic!("a second create must lose to the first: {other:?}"),
    }
    let second = store.put_if(config("b"), Some(first)).await.expect("over the revision read");
    assert!(second > first);
    let lost = store.put_if(config("c"), Some(first)).await.expect_err("over a stale revision");
    assert!(lost.to_string().contains("lost to that one"), "{lost}");
    assert!(matches!(lost, StoreError::Conflict { current: Some(c), .. } if c == second), "{lost:?}");
    assert_eq!(store.get(key.clone()).await.unwrap().map(|(r, _)| r), Some(config("b")), "nothing changed");
    store.delete(key.clone()).await.unwrap();
    assert!(matches!(store.put_if(config("d"), Some(second)).await, Err(StoreError::Conflict { current: None, .. })));
}
