// The app is built into the build tree (make passes --outDir); nothing is
// loaded from anywhere but the web role itself.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  build: {
    emptyOutDir: true,
    sourcemap: false,
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
  },
});
