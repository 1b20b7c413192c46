// Bundle the page with esbuild, mending one race in @libp2p/webrtc on the way (see webrtcInitChannelRace).
import { build } from 'esbuild'
import { readFile } from 'node:fs/promises'

// @libp2p/webrtc 6.0.33, initiate-connection.js: the dialer opens an "init" data channel, waits for it to open,
// closes it and waits for it to close. The answering side closes that channel as soon as it arrives, so when
// the dialer sees its peer connection "connected" late (about one dial in five on a loaded machine), the
// channel has already opened and closed and the dialer waits for events that never come until the dial times
// out. Wait only for what has not happened yet.
const webrtcInitChannelRace = {
  file: /@libp2p[\\/]webrtc[\\/]dist[\\/]src[\\/]private-to-private[\\/]initiate-connection\.js$/,
  edits: [
    [/if \(channel\.readyState !== 'open'\) \{/, "if (channel.readyState === 'connecting') {"],
    [/channel\.close\(\);([\s\S]*?)await pEvent\(channel, 'close', \{\s*signal\s*\}\);/,
      "if (channel.readyState !== 'closed') { channel.close();$1await pEvent(channel, 'close', { signal }); }"]
  ]
}

const mend = (fix) => ({
  name: 'mend',
  setup (esbuild) {
    esbuild.onLoad({ filter: fix.file }, async ({ path }) => {
      let source = await readFile(path, 'utf8')
      for (const [pattern, replacement] of fix.edits) {
        // a dependency upgrade that moves this code must fail the build, not ship the race silently
        if (!pattern.test(source)) throw new Error(`${path} no longer matches ${pattern}: re-check the fix in build.mjs`)
        source = source.replace(pattern, replacement)
      }
      return { contents: source, loader: 'js' }
    })
  }
})

await build({
  entryPoints: ['src/app.js'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2022',
  outfile: 'dist/app.js',
  plugins: [mend(webrtcInitChannelRace)],
  logLevel: 'info'
})
