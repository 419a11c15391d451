import { defineConfig } from 'vite';

// `npm run dev` proxies the API and the WebSocket to a server on :8080;
// `npm run build` writes dist/, which `stompline serve` serves at /.
export default defineConfig({
  esbuild: { jsx: 'automatic' },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: true },
  server: {
    proxy: {
      '/api': 'http://127.0.0.1:8080',
      '/ws': { target: 'ws://127.0.0.1:8080', ws: true },
    },
  },
});
