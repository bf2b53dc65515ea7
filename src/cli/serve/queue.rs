//! The batching queue: requests from every client wait here until the model thread packs them
//! into a batch by a token budget and a request cap (TEI's queue). Pure bookkeeping, no model.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sinew::fusion::Setup;
use tokio::sync::oneshot;

use super::api::{ApiError, AttentionMap, LabelScore};

/// What a request asks of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    /// Mean-pooled embeddings.
    Embed {
        /// Scaled to unit length.
        normalize: bool,
    },
    /// The setup's head's scores.
    Predict {
        /// Logits instead of probabilities.
        raw_scores: bool,
    },
    /// The setup's fusion attentions, averaged.
    Attention,
}

impl Task {
    /// Requests whose tasks share a kind can share a forward pass.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Embed { .. } => "embed",
            Self::Predict { .. } => "predict",
            Self::Attention => "attention",
        }
    }
}

/// The model's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// One embedding per text.
    Embeddings(Vec<Vec<f32>>),
    /// Label scores per text, highest first.
    Predictions(Vec<Vec<LabelScore>>),
    /// The fusion attention over all the texts.
    Attention(AttentionMap),
}

/// One client's request, validated and waiting for the model.
#[derive(Debug)]
pub struct Request {
    /// The setup (`None`: the plain backbone).
    pub setup: Option<Setup>,
    /// What to compute.
    pub task: Task,
    /// The texts (each within the model's limit, or to be cut at it).
    pub texts: Vec<String>,
    /// Tokens of its longest text (after truncation).
    pub longest: usize,
    /// Where the answer goes; closed when the client hung up.
    pub respond: oneshot::Sender<Result<Reply, ApiError>>,
    /// When it was queued.
    pub arrived: Instant,
}

impl Request {
    /// Whether its client is still waiting.
    pub fn wanted(&self) -> bool {
        !self.respond.is_closed()
    }
}

/// How batches are packed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most padded tokens (texts × longest text) in one batch.
    pub max_batch_tokens: usize,
    /// Most texts in one batch.
    pub max_batch_requests: usize,
    /// Longest a request waits for others to share its batch.
    pub max_wait: Duration,
}

/// Waiting requests, oldest first.
#[derive(Debug, Default)]
pub struct Queue {
    waiting: VecDeque<Request>,
}

impl Queue {
    /// Adds a request at the back.
    pub fn push(&mut self, request: Request) {
        self.waiting.push_back(request);
    }

    /// Requests waiting (hung-up ones included until the next batch skips them).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// When the oldest waiting request stops waiting for company.
    pub fn deadline(&self, limits: &Limits) -> Option<Instant> {
        self.waiting.front().map(|r| r.arrived + limits.max_wait)
    }

    /// Whether the waiting requests already fill a batch (no point waiting for more).
    pub fn full(&self, limits: &Limits) -> bool {
        let mut texts = 0;
        let mut longest = 0;
        for r in &self.waiting {
            texts += r.texts.len();
            longest = longest.max(r.longest);
            if texts >= limits.max_batch_requests || texts * longest >= limits.max_batch_tokens {
                return true;
            }
        }
        false
    }

    /// Takes the next batch, oldest first: whole requests while the texts stay within the cap
    /// and texts × longest within the token budget (the first request always goes, whatever
    /// its size: admission keeps each request within the limits). Requests whose client hung
    /// up are dropped on the way; returns the batch and how many were dropped.
    pub fn next_batch(&mut self, limits: &Limits) -> (Vec<Request>, usize) {
        let mut batch: Vec<Request> = Vec::new();
        let mut dropped = 0;
        let (mut texts, mut longest) = (0, 0);
        while let Some(next) = self.waiting.front() {
            if !next.wanted() {
                self.waiting.pop_front();
                dropped += 1;
                continue;
            }
            let t = texts + next.texts.len();
            let l = longest.max(next.longest);
            let fits = t <= limits.max_batch_requests && t * l <= limits.max_batch_tokens;
            if !batch.is_empty() && !fits {
                break;
            }
            texts = t;
            longest = l;
            batch.push(self.waiting.pop_front().expect("front exists"));
        }
        (batch, dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        texts: usize,
        longest: usize,
    ) -> (Request, oneshot::Receiver<Result<Reply, ApiError>>) {
        let (tx, rx) = oneshot::channel();
        let request = Request {
            setup: None,
            task: Task::Embed { normalize: false },
            texts: vec!["x".into(); texts],
            longest,
            respond: tx,
            arrived: Instant::now(),
        };
        (request, rx)
    }

    const LIMITS: Limits = Limits {
        max_batch_tokens: 100,
        max_batch_requests: 8,
        max_wait: Duration::from_millis(5),
    };

    /// Requests go oldest first while texts ≤ the cap and texts × longest ≤ the budget.
    #[test]
    fn batches_pack_by_cap_and_budget() {
        let mut queue = Queue::default();
        let mut receivers = Vec::new();
        // 3 texts of ≤ 10 tokens, then 4 more (7 texts × 10 = 70), then 2 of 20 (9 > 8 texts).
        for (n, l) in [(3, 10), (4, 10), (2, 20), (1, 60), (1, 60)] {
            let (r, rx) = request(n, l);
            queue.push(r);
            receivers.push(rx);
        }
        assert!(queue.full(&LIMITS));
        let sizes = |b: &[Request]| b.iter().map(|r| r.texts.len()).collect::<Vec<_>>();
        let (batch, dropped) = queue.next_batch(&LIMITS);
        assert_eq!((sizes(&batch), dropped), (vec![3, 4], 0));
        // 2 × 20 = 40, then 3 × 60 = 180 > 100: alone.
        let (batch, _) = queue.next_batch(&LIMITS);
        assert_eq!(sizes(&batch), vec![2]);
        // 1 × 60, then 2 × 60 = 120 > 100.
        let (batch, _) = queue.next_batch(&LIMITS);
        assert_eq!(sizes(&batch), vec![1]);
        assert!(!queue.full(&LIMITS));
        let (batch, _) = queue.next_batch(&LIMITS);
        assert_eq!(sizes(&batch), vec![1]);
        assert!(queue.is_empty());
    }

    /// A request over the limits on its own still goes, alone.
    #[test]
    fn an_oversized_request_goes_alone() {
        let mut queue = Queue::default();
        let (big, _rx1) = request(20, 50);
        let (small, _rx2) = request(1, 5);
        queue.push(big);
        queue.push(small);
        let (batch, _) = queue.next_batch(&LIMITS);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].texts.len(), 20);
    }

    /// A request whose client hung up is dropped, not batched.
    #[test]
    fn hung_up_requests_are_dropped() {
        let mut queue = Queue::default();
        let (gone, rx) = request(1, 5);
        drop(rx);
        let (kept, _rx) = request(2, 5);
        queue.push(gone);
        queue.push(kept);
        let (batch, dropped) = queue.next_batch(&LIMITS);
        assert_eq!(dropped, 1);
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].texts.len(), 2);
    }
}
