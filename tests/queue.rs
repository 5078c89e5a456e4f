//! The pool's waiting line on the real engine: callers who find every sandbox taken wait in
//! one FIFO and hear their place as it moves; a freed sandbox goes to the head of the line;
//! the line is bounded; a caller who gives up leaves it without taking a sandbox with it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use sandpool::pool::{ContainerPool, Lease, Place, PoolError, RecycleOutcome};

/// A queued acquire running in a task, and every place it was told.
type Queued = (
    tokio::task::JoinHandle<Result<Lease, PoolError>>,
    Arc<Mutex<Vec<Place>>>,
);

/// Acquires in a task, recording every place it is told.
fn queued_acquire(pool: &ContainerPool) -> Queued {
    let places = Arc::new(Mutex::new(Vec::new()));
    let (pool, seen) = (pool.clone(), places.clone());
    let task = tokio::spawn(async move {
        let mut on_place = move |p: Place| seen.lock().unwrap().push(p);
        pool.acquire_queued(&mut on_place).await
    });
    (task, places)
}

async fn waiting(pool: &ContainerPool, n: usize) {
    within(20, "callers queued", async {
        while pool.status().waiting != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_served_first_come_first_served_and_told_their_place() {
    let instance = unique_instance("queue");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 1;
    config.pool.max_waiters = 2;
    let pool = warm_pool(&config, &cleanup).await;

    let first = pool.acquire().await.expect("the one sandbox");
    let (b, b_places) = queued_acquire(&pool);
    waiting(&pool, 1).await;
    let (c, c_places) = queued_acquire(&pool);
    waiting(&pool, 2).await;
    assert_eq!(b_places.lock().unwrap().last().map(|p| p.position), Some(1));
    assert_eq!(c_places.lock().unwrap().last().map(|p| p.position), Some(2));
    assert!(
        c_places.lock().unwrap().last().unwrap().estimate_ms > 0,
        "an estimate is given"
    );

    // The line is bounded: one more is refused at once.
    match pool.acquire().await {
        Err(PoolError::QueueFull { waiting: 2 }) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }

    // The freed sandbox goes to the head of the line, and the next moves up.
    let rx = pool.release(&first.lease_ref()).unwrap();
    assert_eq!(
        within(30, "recycle", rx).await.unwrap(),
        RecycleOutcome::Recycled
    );
    let second = within(30, "b served", b).await.unwrap().expect("b leases");
    assert_eq!(second.container_id, first.container_id);
    waiting(&pool, 1).await;
    within(5, "c told it moved up", async {
        while c_places.lock().unwrap().last().map(|p| p.position) != Some(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!c.is_finished(), "c still waits while b holds the sandbox");

    let rx = pool.release(&second.lease_ref()).unwrap();
    within(30, "recycle", rx).await.unwrap();
    let third = within(30, "c served", c).await.unwrap().expect("c leases");
    assert_eq!(third.container_id, first.container_id);
    assert_eq!(pool.status().waiting, 0);
    let _ = pool.release(&third.lease_ref());
    shutdown_leaves_nothing(&pool, &instance).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_who_gives_up_leaves_the_line_and_takes_nothing() {
    let instance = unique_instance("queue-leave");
    let cleanup = Cleanup::new(&instance);
    let mut config = test_config(&instance);
    config.pool.min_idle = 1;
    config.pool.max = 1;
    config.pool.acquire_timeout = Duration::from_millis(300);
    let pool = warm_pool(&config, &cleanup).await;

    let first = pool.acquire().await.expect("the one sandbox");
    // Times out in the line.
    match pool.acquire().await {
        Err(PoolError::Exhausted { .. }) => {}
        other => panic!("expected Exhausted, got {other:?}"),
    }
    assert_eq!(
        pool.status().waiting,
        0,
        "the timed-out caller left the line"
    );
    // Dropped while waiting (a client that went away).
    let (gone, _) = queued_acquire(&pool);
    waiting(&pool, 1).await;
    gone.abort();
    let _ = gone.await;
    assert_eq!(pool.status().waiting, 0, "the dropped caller left the line");

    // The sandbox comes back to the idle set, not to a caller who is gone.
    let rx = pool.release(&first.lease_ref()).unwrap();
    within(30, "recycle", rx).await.unwrap();
    let status = pool.status();
    assert_eq!((status.idle, status.leased), (1, 0), "{status:?}");
    shutdown_leaves_nothing(&pool, &instance).await;
}
