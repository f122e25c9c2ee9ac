//! The lab wing: what builds throw-away topologies and drives traffic
//! through them (`netpath demo`, `netpath bench`, the integration tests'
//! namespaces, dockerd in a namespace, raw frames). It stands on the product
//! modules (it runs the real `netpath` binary and reads its maps); no
//! product module imports it.

pub mod bench;
pub mod cni;
pub mod demo;
pub mod dockerlab;
pub mod frames;
pub mod sctp;
pub mod topology;
pub mod traffic;
