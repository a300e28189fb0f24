// The Socket.IO peer of the channel benchmark: rooms, connection-state recovery, WebSocket
// transport only, no per-message deflate (Socket.IO's default). Published events go to a room
// with io.to(room).emit, which encodes once per broadcast.
//
//   node socketio-server.mjs PORT
import { createServer } from 'node:http'
import { Server } from 'socket.io'

const port = Number(process.argv[2] || 3100)
const http = createServer()
const io = new Server(http, {
  transports: ['websocket'],
  connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000, skipMiddlewares: true },
  maxHttpBufferSize: 1e6
})
io.on('connection', (socket) => {
  socket.on('join', (room, ack) => { socket.join(room); if (typeof ack === 'function') ack() })
  socket.on('publish', (room, data) => { io.to(room).emit('pub', data) })
})
http.listen(port, '127.0.0.1', () => console.log(`socket.io ${port}`))
