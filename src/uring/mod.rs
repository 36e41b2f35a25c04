//! The io_uring ring of one worker, and the only `unsafe` code of the balancer (see
//! docs/ARCHITECTURE.md, "The unsafe contract").
//!
//! Pushing an SQE is unsafe because the kernel will read or write the memory it points at
//! until the matching CQE arrives. [`Ring`] makes that safe to call by owning all such
//! memory itself and by recording which operation uses which part of it:
//!
//! - the forwarding buffers, two per connection slot, in one [`arena`] mapping that lives as
//!   long as the ring; a buffer is lent to one receive or send at a time, and
//!   [`Ring::buf`]/[`Ring::buf_mut`] give access to it only while no operation has it;
//! - per slot, the backend address of a connect (one connect at a time) and its timeout;
//! - per listener, the client address an accept writes (one accept at a time), turned into
//!   an `OwnedFd` and a `SocketAddr` when the accept completes;
//! - the eventfd read target and the tick timespec, boxed;
//! - the provided buffer ring of UDP receives ([`datagrams`]): a buffer is the kernel's
//!   while in the ring, and readable only between the completion that names it and its
//!   recycling.
//!
//! The ring marks the operations it tracks in the top two bits of their `user_data`
//! (callers keep those bits clear) and frees their memory when their final completion is
//! reaped. On drop it cancels what is still in flight and waits for it; if the kernel does
//! not answer in time the memory is leaked rather than freed under it.
//!
//! [`fd`] takes ownership of descriptors received from another process (an upgrade).
//!
//! Descriptors given to operations are plain numbers: a wrong one makes an operation fail,
//! it cannot corrupt memory. Their owners (`OwnedFd`s in the worker) keep them open while
//! operations use them, and [`Ring::close`] takes ownership of what it closes.

mod arena;
mod datagrams;
pub mod fd;
mod mapping;
mod ring;

pub use datagrams::Datagram;
pub use ring::{Accepted, Completion, Ring, RingError, RingFeatures};
