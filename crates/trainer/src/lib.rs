//! Fine-tuning: LLM-Adapters data, the training loop, evaluation and metrics.
//!
//! Not implemented yet: this crate is filled by the dense-LoRA issue (#3). It exports nothing so
//! that nothing can be mistaken for a working trainer.
#![warn(missing_docs)]
