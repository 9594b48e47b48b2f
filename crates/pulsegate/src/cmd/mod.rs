pub mod doctor;
pub mod probe;
pub mod pubsub;
