// Peer: rooms on uWebSockets (C++) pub/sub, for the rooms rows of scripts/bench.sh --targets.
// The room chat of shared/peers/uws (every socket subscribed to one topic, each text frame
// published to it, the sender included), with the topic taken from the upgrade's query:
// ws://HOST:PORT/ANY?room=NAME subscribes to NAME (no room: "room", as the one-room peer).
// Built by scripts/uws-peer.sh with that peer's build.sh (this file stands in for its
// uws_chat.cpp, hence the name). usage: uwschat PORT (listens on 127.0.0.1:PORT)
#include "App.h"
#include <cstdlib>
#include <iostream>
#include <string>

struct PerSocketData {
    std::string topic;
};

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 9001;
    uWS::App *app = new uWS::App();
    app->ws<PerSocketData>("/*", {
        .compression = uWS::DISABLED,
        .maxPayloadLength = 4096,
        .idleTimeout = 60,
        .maxBackpressure = 256 * 1024,
        .closeOnBackpressureLimit = true,
        .sendPingsAutomatically = true,
        .upgrade = [](auto *res, auto *req, auto *context) {
            std::string_view room = req->getQuery("room");
            res->template upgrade<PerSocketData>({std::string(room.empty() ? "room" : room)},
                req->getHeader("sec-websocket-key"), req->getHeader("sec-websocket-protocol"),
                req->getHeader("sec-websocket-extensions"), context);
        },
        .open = [](auto *ws) { ws->subscribe(ws->getUserData()->topic); },
        .message = [&app](auto *ws, std::string_view message, uWS::OpCode opCode) {
            app->publish(ws->getUserData()->topic, message, opCode);
        },
    }).listen("127.0.0.1", port, [port](auto *ls) {
        if (ls) std::cout << "listening on " << port << std::endl;
        else { std::cerr << "cannot listen" << std::endl; exit(1); }
    });
    app->run();
}
