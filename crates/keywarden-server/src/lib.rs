//! Keywarden's HTTP service: the public and admin listeners, verify, forward-auth, the
//! admin and self-service APIs, configuration, and the service's startup and shutdown.

pub mod analytics;
pub mod app;
pub mod auth;
pub mod bodies;
pub mod config;
pub mod errors;
pub mod extract;
pub mod front;
pub mod gateway;
pub mod github_keys;
pub mod in_flight;
pub mod leaks;
pub mod manage;
pub mod manage_apps;
pub mod manage_webhooks;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod secretbox;
pub mod settings;
pub mod state;
pub mod upstream;
pub mod views;
pub mod web;
pub mod webhooks;
pub mod workers;
