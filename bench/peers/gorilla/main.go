// A room server on gorilla/websocket for chatloop's bench (scripts/peers.sh): every text
// frame from any client goes to every client, the sender included.
//
// The design is the one gorilla's chat example teaches: one hub goroutine owns the set of
// clients; each client has a read goroutine that hands what it reads to the hub, and a write
// goroutine draining a 256-message send channel, writing whatever has queued up since its
// last write into one frame, newline-separated. A client whose channel is full is dropped.
//
// Usage: gorilla-room PORT   (listens on 127.0.0.1:PORT, any path)
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/gorilla/websocket"
)

const (
	sendQueue  = 256                // messages waiting for one client's write goroutine
	writeLimit = 10 * time.Second   // one write may take this long
	idleLimit  = 60 * time.Second   // a client silent for this long (no pong) is gone
	pingEvery  = idleLimit * 9 / 10 // keeps a healthy client's read deadline moving
	frameLimit = 4096               // largest message read
)

type member struct {
	room *room
	ws   *websocket.Conn
	out  chan []byte
}

type room struct {
	members map[*member]struct{}
	joins   chan *member
	leaves  chan *member
	said    chan []byte
}

func newRoom() *room {
	return &room{
		members: make(map[*member]struct{}),
		joins:   make(chan *member),
		leaves:  make(chan *member),
		said:    make(chan []byte),
	}
}

// serve is the hub: the only goroutine that touches members.
func (r *room) serve() {
	for {
		select {
		case m := <-r.joins:
			r.members[m] = struct{}{}
		case m := <-r.leaves:
			if _, ok := r.members[m]; ok {
				delete(r.members, m)
				close(m.out)
			}
		case msg := <-r.said:
			for m := range r.members {
				select {
				case m.out <- msg:
				default: // too far behind: let it go
					delete(r.members, m)
					close(m.out)
				}
			}
		}
	}
}

// listen reads the client's frames until it fails, passing each to the hub.
func (m *member) listen() {
	defer func() {
		m.room.leaves <- m
		m.ws.Close()
	}()
	m.ws.SetReadLimit(frameLimit)
	m.ws.SetReadDeadline(time.Now().Add(idleLimit))
	m.ws.SetPongHandler(func(string) error { return m.ws.SetReadDeadline(time.Now().Add(idleLimit)) })
	for {
		kind, data, err := m.ws.ReadMessage()
		if err != nil {
			return
		}
		if kind == websocket.TextMessage {
			m.room.said <- data
		}
	}
}

// speak writes what the hub queued: everything waiting goes out in one frame.
func (m *member) speak() {
	ping := time.NewTicker(pingEvery)
	defer func() {
		ping.Stop()
		m.ws.Close()
	}()
	for {
		select {
		case msg, ok := <-m.out:
			m.ws.SetWriteDeadline(time.Now().Add(writeLimit))
			if !ok {
				m.ws.WriteMessage(websocket.CloseMessage, []byte{})
				return
			}
			w, err := m.ws.NextWriter(websocket.TextMessage)
			if err != nil {
				return
			}
			w.Write(msg)
			for n := len(m.out); n > 0; n-- {
				w.Write([]byte{'\n'})
				w.Write(<-m.out)
			}
			if err := w.Close(); err != nil {
				return
			}
		case <-ping.C:
			m.ws.SetWriteDeadline(time.Now().Add(writeLimit))
			if err := m.ws.WriteMessage(websocket.PingMessage, nil); err != nil {
				return
			}
		}
	}
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gorilla-room PORT")
		os.Exit(2)
	}
	r := newRoom()
	go r.serve()
	upgrader := websocket.Upgrader{ReadBufferSize: 1024, WriteBufferSize: 1024}
	http.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		ws, err := upgrader.Upgrade(w, req, nil)
		if err != nil {
			return // the upgrader has answered with an HTTP error
		}
		m := &member{room: r, ws: ws, out: make(chan []byte, sendQueue)}
		r.joins <- m
		go m.speak()
		go m.listen()
	})
	addr := "127.0.0.1:" + os.Args[1]
	fmt.Println("listening on", addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
