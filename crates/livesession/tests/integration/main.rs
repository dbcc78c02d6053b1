//! Integration tests: the real server in-process on port 0, real SQLite files, real
//! desktops (Xvnc, openbox, Chromium), real WebSocket clients. One binary for all.

mod api;
mod cdp;
mod cluster;
mod cluster_support;
mod control;
mod defences;
mod doctor;
mod faults;
mod files;
mod hibernation;
mod lifecycle;
mod limits;
mod links;
mod logins;
mod metrics;
mod payments;
mod postgres;
mod pool;
mod processes;
mod profiles;
mod recording;
mod resources;
mod sandbox;
mod support;
mod tasks;
mod vnc;
mod worker_example;
