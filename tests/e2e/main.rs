//! Parley's end-to-end tests, one binary: the four services against real NATS, Redis and
//! PostgreSQL, each test on infrastructure of its own.

mod attachments;
mod bad_input;
mod browser;
mod cli;
mod crash;
mod desk;
mod email;
mod erasure;
mod identity;
mod isolation;
mod media;
mod race;
mod routing;
mod routing_people;
mod routing_queues;
mod search;
mod service;
mod skeleton;
mod tidy;
mod tracing;
mod webchat;
mod webhooks;
