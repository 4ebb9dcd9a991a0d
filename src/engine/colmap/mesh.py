"""Meshes COLMAP's sparse points with Open3D: normals from the 20 nearest neighbours, then Poisson
surface reconstruction at depth 8 (the measured CPU workaround: COLMAP's own meshers need dense
points or CGAL). Usage: mesh.py points.ply mesh.ply. Exit 2: Open3D is missing; 3: too few points."""
import sys

try:
    import open3d as o3d
except ImportError as e:
    print(f"mesh: Open3D is not available to {sys.executable}: {e}", flush=True)
    sys.exit(2)

points = o3d.io.read_point_cloud(sys.argv[1])
if len(points.points) < 100:
    print(f"mesh: only {len(points.points)} points, too few to mesh", flush=True)
    sys.exit(3)
points.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(knn=20))
mesh, _densities = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(points, depth=8)
if not o3d.io.write_triangle_mesh(sys.argv[2], mesh):
    sys.exit(1)
print(f"mesh: {len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles", flush=True)
