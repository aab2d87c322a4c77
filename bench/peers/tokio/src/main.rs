//! A room server on tokio-tungstenite for chatloop's bench (scripts/peers.sh): every text
//! frame from any client goes to every client, the sender included.
//!
//! Written in the crate's usual style (its examples/server.rs): a task per connection, a map
//! of every peer's unbounded channel behind a mutex, the socket split into a sink fed from the
//! channel and a stream whose messages are broadcast. That example skips the sender and prints
//! every message; this one does neither.
//!
//! Usage: tokio-room PORT   (listens on 127.0.0.1:PORT, any path)

use futures_util::{SinkExt, StreamExt, future, pin_mut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;

type PeerMap = Arc<Mutex<HashMap<SocketAddr, UnboundedSender<Message>>>>;

async fn handle_connection(peers: PeerMap, raw: TcpStream, addr: SocketAddr) {
    let Ok(ws) = tokio_tungstenite::accept_async(raw).await else { return };
    let (tx, mut rx) = unbounded_channel();
    peers.lock().unwrap().insert(addr, tx);
    let (mut outgoing, mut incoming) = ws.split();

    let broadcast_incoming = async {
        while let Some(Ok(msg)) = incoming.next().await {
            if msg.is_text() {
                for tx in peers.lock().unwrap().values() {
                    let _ = tx.send(msg.clone());
                }
            } else if msg.is_close() {
                break;
            }
        }
    };
    let receive_from_others = async {
        while let Some(msg) = rx.recv().await {
            if outgoing.send(msg).await.is_err() {
                break;
            }
        }
    };
    pin_mut!(broadcast_incoming, receive_from_others);
    future::select(broadcast_incoming, receive_from_others).await;
    peers.lock().unwrap().remove(&addr);
}

#[tokio::main]
async fn main() {
    let port = match std::env::args().nth(1).map(|p| p.parse::<u16>()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: tokio-room PORT");
            std::process::exit(2);
        }
    };
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("listening on 127.0.0.1:{port}");
    let peers = PeerMap::default();
    while let Ok((stream, addr)) = listener.accept().await {
        tokio::spawn(handle_connection(peers.clone(), stream, addr));
    }
}
