// PM2 process file (the seed's deployment): `pm2 start deploy/ecosystem.config.cjs`.
// PM2 runs the Python server as any other process: interpreter "none" runs the console script
// of the project's virtualenv directly. Set the configuration in `env` (or in the environment
// of `pm2 start`); `pm2 logs captify-ws`, `pm2 monit`.
const path = require('path')
const root = path.resolve(__dirname, '..')

module.exports = {
  apps: [
    {
      name: 'captify-ws',
      cwd: root,
      script: path.join(root, '.venv', 'bin', 'captify-ws'),
      args: 'serve',
      interpreter: 'none',
      autorestart: true,
      max_restarts: 10,
      kill_timeout: 15000, // SIGTERM, then wait for the graceful shutdown (CAPTIFY_WS_SHUTDOWN_TIMEOUT_S)
      env: {
        CAPTIFY_WS_HOST: process.env.CAPTIFY_WS_HOST || '127.0.0.1',
        CAPTIFY_WS_PORT: process.env.CAPTIFY_WS_PORT || '3000'
      }
    }
  ]
}
