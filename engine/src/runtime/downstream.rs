//! What a source's `send` feeds: the transform chain, then one bounded channel per sink and the
//! dead-letter channel. Where the chain runs is the source's choice ([`ChainPlacement`]):
//!
//! - **on the source's task** (network sources: Kafka, CouchDB, Cosmos DB): a batch is
//!   transformed while the bytes the source just read and validated are still in that core's
//!   cache, and a channel hop per batch (a wake-up and a cross-core hand-over) disappears. Such a
//!   source spends its time waiting on the network, so there is no pipelining to lose; on the
//!   Kafka benchmark this cut Feedline's CPU per event by about 12%.
//! - **on a task of its own** (local sources: file, stdin, generator): a source that is busy
//!   reading and parsing as fast as the disk allows gains a second core for the transforms
//!   (on the engine benchmark, inline transforms cost 10% of throughput, a WASM filter 30%).
//!
//! A pipeline without transforms always forwards inline. Backpressure is the same either way:
//! `send` waits while the next channel is full.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::chain::{run_chain, ChainStage};
use crate::component::{Batch, ChainPlacement, Closed, Rejected};

/// The stages after a source, as its `send` sees them.
pub(crate) enum Downstream {
    /// The chain runs inside `send`.
    Inline(Mutex<Chain>, Forward),
    /// The chain runs on its own task, fed through this channel.
    Task(mpsc::Sender<Batch>),
}

/// The transform stages and what a panic in one of them stops.
pub(crate) struct Chain {
    stages: Vec<ChainStage>,
    /// A transform panicked: nothing more goes through.
    broken: bool,
    fatal: CancellationToken,
    fatal_reason: Arc<Mutex<Option<String>>>,
}

/// Where transformed batches and rejections go.
pub(crate) struct Forward {
    sinks: Vec<mpsc::Sender<Batch>>,
    dead_letter: mpsc::Sender<Rejected>,
}

impl Downstream {
    /// Set up the stages after a source; a chain task, if any, is spawned into `tasks`.
    pub(crate) fn new(
        placement: ChainPlacement,
        stages: Vec<ChainStage>,
        sinks: Vec<mpsc::Sender<Batch>>,
        dead_letter: mpsc::Sender<Rejected>,
        fatal: CancellationToken,
        fatal_reason: Arc<Mutex<Option<String>>>,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let inline = stages.is_empty() || placement == ChainPlacement::SourceTask;
        let chain = Chain { stages, broken: false, fatal, fatal_reason };
        let forward = Forward { sinks, dead_letter };
        if inline {
            return Self::Inline(Mutex::new(chain), forward);
        }
        let (tx, rx) = mpsc::channel::<Batch>(4);
        tasks.spawn(run_chain_task(chain, rx, forward));
        Self::Task(tx)
    }

    /// Transform `batch` (here or on the chain task) and pass the results on. `Closed` once the
    /// pipeline is stopping.
    pub(crate) async fn send(&self, batch: Batch) -> Result<(), Closed> {
        match self {
            Self::Inline(chain, forward) => {
                // The lock is only ever taken here, and never held across an await.
                let (out, rejected) = chain.lock().map_err(|_| Closed)?.transform(batch)?;
                forward.send(out, rejected).await
            }
            Self::Task(tx) => tx.send(batch).await.map_err(|_| Closed),
        }
    }
}

impl Chain {
    fn transform(&mut self, batch: Batch) -> Result<(Batch, Vec<Rejected>), Closed> {
        if self.broken {
            return Err(Closed);
        }
        run_chain(&mut self.stages, batch).map_err(|panic| {
            // The batch stays unacknowledged (its tokens were dropped with it): it is read
            // again after a restart.
            tracing::error!(error = %panic, "transform failed; stopping the pipeline");
            self.broken = true;
            super::fail_pipeline(&self.fatal, &self.fatal_reason, panic.to_string());
            Closed
        })
    }
}

impl Forward {
    /// Dead-letter the rejections and hand the batch to every sink (each copy holds its own
    /// token shares).
    async fn send(&self, out: Batch, rejected: Vec<Rejected>) -> Result<(), Closed> {
        for r in rejected {
            self.dead_letter.send(r).await.map_err(|_| Closed)?;
        }
        if out.is_empty() {
            return Ok(());
        }
        let Some((last, rest)) = self.sinks.split_last() else { return Ok(()) };
        for tx in rest {
            let copy = Batch { events: out.events.clone(), acks: out.acks.clone() };
            tx.send(copy).await.map_err(|_| Closed)?;
        }
        last.send(out).await.map_err(|_| Closed)
    }
}

/// The chain's own task: until the source's sender is gone or the pipeline breaks.
async fn run_chain_task(mut chain: Chain, mut rx: mpsc::Receiver<Batch>, forward: Forward) {
    while let Some(batch) = rx.recv().await {
        let Ok((out, rejected)) = chain.transform(batch) else { return };
        if forward.send(out, rejected).await.is_err() {
            return;
        }
    }
}
