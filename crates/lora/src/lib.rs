//! LoRA adapters for the frozen projections of `llama-burn` models, with PEFT-format I/O.
//!
//! Not implemented yet: this crate is filled by the dense-LoRA issue (#3). It exports nothing so
//! that nothing can be mistaken for a working adapter.
#![warn(missing_docs)]
