pub mod pubsub;
