//! A TCP echo backend for the L4 listener tests: greets each connection with its name and a
//! newline, then echoes every byte until the client half-closes, then half-closes too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub struct TcpEcho {
    pub name: String,
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpEcho {
    pub async fn start(name: &str) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tcp echo");
        let addr = listener.local_addr().expect("bound address");
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let greeting = format!("{name}\n");
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if socket.write_all(greeting.as_bytes()).await.is_err() {
                        return;
                    }
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        match socket.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if socket.write_all(&buffer[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        TcpEcho {
            name: name.to_string(),
            addr,
            connections,
            task,
        }
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects through `addr`, reads the greeting line, sends `payload`, half-closes and reads
/// everything back: (backend name, echoed bytes).
pub async fn exchange(addr: SocketAddr, payload: &[u8]) -> std::io::Result<(String, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut read, mut write) = stream.split();
    let send = async {
        write.write_all(payload).await?;
        write.shutdown().await
    };
    let receive = async {
        let mut all = Vec::new();
        read.read_to_end(&mut all).await?;
        Ok::<_, std::io::Error>(all)
    };
    let ((), all) = tokio::try_join!(send, receive)?;
    let newline = all
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| std::io::Error::other("no greeting line: connection closed early"))?;
    let name = String::from_utf8_lossy(&all[..newline]).to_string();
    Ok((name, all[newline + 1..].to_vec()))
}
