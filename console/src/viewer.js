// The 3D viewer (three.js): a textured OBJ + MTL (Meshroom) or PLY points and meshes (COLMAP),
// with the cameras when a `cameras.json` result gives them. Orbit (drag), zoom (wheel), pan
// (right drag or shift+drag), reset and a wireframe toggle; the canvas is keyboard reachable.
import * as THREE from 'three';
import { OrbitControls } from 'three/examples/jsm/controls/OrbitControls.js';
import { OBJLoader } from 'three/examples/jsm/loaders/OBJLoader.js';
import { MTLLoader } from 'three/examples/jsm/loaders/MTLLoader.js';
import { PLYLoader } from 'three/examples/jsm/loaders/PLYLoader.js';
import { fetchFile } from './api.js';
import { h } from './dom.js';

const TEXTURE = /\.(png|jpe?g)$/i;

export class Viewer {
  constructor(box, note) {
    this.note = note;
    this.urls = [];
    this.renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
    this.renderer.setPixelRatio(Math.min(window.devicePixelRatio, 2));
    const canvas = this.renderer.domElement;
    canvas.id = 'viewer-canvas';
    canvas.tabIndex = 0;
    canvas.setAttribute('role', 'img');
    canvas.setAttribute('aria-label', 'The reconstructed model; drag to orbit, wheel to zoom, arrow keys to pan');
    this.scene = new THREE.Scene();
    this.scene.background = new THREE.Color(0x20242a);
    this.scene.add(new THREE.HemisphereLight(0xffffff, 0x444444, 2.2));
    const sun = new THREE.DirectionalLight(0xffffff, 1.5);
    sun.position.set(3, 5, 4);
    this.scene.add(sun);
    this.camera = new THREE.PerspectiveCamera(50, 1, 0.01, 1000);
    this.controls = new OrbitControls(this.camera, canvas);
    this.controls.listenToKeyEvents(canvas);
    this.controls.enableDamping = true;
    this.model = new THREE.Group();
    this.scene.add(this.model);
    this.wire = false;

    const reset = h('button', { type: 'button', id: 'view-reset', class: 'secondary small' }, 'Reset view');
    reset.addEventListener('click', () => this.reset());
    const wire = h('button', { type: 'button', id: 'view-wireframe', class: 'secondary small', 'aria-pressed': 'false' }, 'Wireframe');
    wire.addEventListener('click', () => {
      this.wire = !this.wire;
      wire.setAttribute('aria-pressed', String(this.wire));
      this.model.traverse((o) => {
        for (const m of [o.material].flat()) if (m && 'wireframe' in m) m.wireframe = this.wire;
      });
    });
    box.replaceChildren(h('div', { class: 'tools' }, reset, wire), canvas);
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(box);
    this.fit();
    const loop = () => {
      try {
        this.controls.update();
        this.renderer.render(this.scene, this.camera);
      } catch (e) {
        // Once, not at every frame: a model the GPU cannot take stops the drawing.
        this.note.textContent = `The model cannot be drawn: ${e.message}`;
        return;
      }
      this.frame = requestAnimationFrame(loop);
    };
    loop();
  }

  fit() {
    const canvas = this.renderer.domElement;
    const width = canvas.parentElement ? canvas.parentElement.clientWidth : 640;
    const height = Math.max(240, Math.min(Math.round(width * 0.62), 560));
    this.renderer.setSize(width, height);
    this.camera.aspect = width / height;
    this.camera.updateProjectionMatrix();
  }

  async blobUrl(jobId, name) {
    const url = URL.createObjectURL(await (await fetchFile(jobId, name)).blob());
    this.urls.push(url);
    return url;
  }

  async load(jobId, results) {
    const names = results.map((r) => r.name);
    const obj = names.find((n) => /\.obj$/i.test(n));
    const plys = names.filter((n) => /\.ply$/i.test(n));
    if (obj) {
      await this.loadObj(jobId, obj, names);
    } else if (plys.length) {
      for (const name of plys) await this.loadPly(jobId, name);
    } else {
      this.note.textContent = 'No mesh or point cloud among the results.';
      return;
    }
    const cameras = names.includes('cameras.json') ? await this.loadCameras(jobId) : 0;
    this.frame_();
    this.note.textContent = `Showing ${obj || plys.join(' and ')}${cameras ? `, with the ${cameras} cameras` : ''}.`;
    this.renderer.domElement.dataset.loaded = 'true';
  }

  async loadObj(jobId, obj, names) {
    const text = await (await fetchFile(jobId, obj)).text();
    const loader = new OBJLoader();
    const mtl = names.find((n) => /\.mtl$/i.test(n));
    const textures = names.filter((n) => TEXTURE.test(n));
    // Textures that browsers cannot decode (Meshroom's default EXR) leave the mesh in plain grey.
    if (mtl && textures.length) {
      const blobs = {};
      for (const t of textures) blobs[t] = await this.blobUrl(jobId, t);
      const manager = new THREE.LoadingManager();
      manager.setURLModifier((url) => blobs[url.split('/').pop()] || url);
      const materials = new MTLLoader(manager).parse(await (await fetchFile(jobId, mtl)).text(), '');
      materials.preload();
      loader.setMaterials(materials);
    }
    const group = loader.parse(text);
    if (!(mtl && textures.length)) {
      group.traverse((o) => {
        if (o.isMesh) o.material = new THREE.MeshStandardMaterial({ color: 0xb8b8b8, side: THREE.DoubleSide });
      });
    }
    this.model.add(group);
  }

  async loadPly(jobId, name) {
    const geometry = new PLYLoader().parse(await (await fetchFile(jobId, name)).arrayBuffer());
    // Open3D writes doubles, which PLYLoader keeps and WebGL cannot take.
    for (const [key, attr] of Object.entries(geometry.attributes)) {
      if (attr.array instanceof Float64Array) {
        geometry.setAttribute(key, new THREE.BufferAttribute(new Float32Array(attr.array), attr.itemSize, attr.normalized));
      }
    }
    const colors = geometry.hasAttribute('color');
    if (geometry.index) {
      geometry.computeVertexNormals();
      const material = new THREE.MeshStandardMaterial({ color: colors ? 0xffffff : 0xb8b8b8, vertexColors: colors, side: THREE.DoubleSide });
      this.model.add(new THREE.Mesh(geometry, material));
    } else {
      // A few pixels each at any zoom: sparse points stay visible from afar.
      const material = new THREE.PointsMaterial({ size: 3, sizeAttenuation: false, vertexColors: colors, color: colors ? 0xffffff : 0xdddddd });
      this.model.add(new THREE.Points(geometry, material));
    }
  }

  // cameras.json: [{name, center: [x, y, z], rotation: [w, x, y, z] (world to camera)}].
  async loadCameras(jobId) {
    const cameras = await (await fetchFile(jobId, 'cameras.json')).json();
    const box = new THREE.Box3().setFromObject(this.model);
    const scale = box.getSize(new THREE.Vector3()).length() / 40 || 0.1;
    for (const c of cameras) {
      const frustum = new THREE.CameraHelper(new THREE.PerspectiveCamera(50, 1.5, scale * 0.1, scale));
      const holder = new THREE.Object3D();
      const [w, x, y, z] = c.rotation;
      holder.quaternion.set(x, y, z, w).invert();
      // COLMAP cameras look down +z; three's down -z.
      holder.quaternion.multiply(new THREE.Quaternion().setFromAxisAngle(new THREE.Vector3(1, 0, 0), Math.PI));
      holder.position.fromArray(c.center);
      holder.add(frustum.camera);
      this.scene.add(holder);
      this.scene.add(frustum);
      holder.updateMatrixWorld(true);
      frustum.update();
    }
    return cameras.length;
  }

  // Points the camera at the whole model, and remembers that view for "Reset view".
  frame_() {
    const box = new THREE.Box3().setFromObject(this.model);
    if (box.isEmpty()) return;
    const center = box.getCenter(new THREE.Vector3());
    const radius = box.getSize(new THREE.Vector3()).length() / 2 || 1;
    this.camera.near = radius / 100;
    this.camera.far = radius * 100;
    this.camera.position.copy(center).add(new THREE.Vector3(0.6, 0.4, 1).normalize().multiplyScalar(radius * 2.4));
    this.camera.updateProjectionMatrix();
    this.controls.target.copy(center);
    this.controls.update();
    this.controls.saveState();
  }

  reset() {
    this.controls.reset();
  }

  dispose() {
    cancelAnimationFrame(this.frame);
    this.resize.disconnect();
    this.controls.dispose();
    this.renderer.dispose();
    for (const u of this.urls) URL.revokeObjectURL(u);
  }
}
