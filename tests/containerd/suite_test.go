// containerd's own content testsuite (containerd 1.6.20, content/testsuite), run over
// `ocistore serve --containerd` through containerd's gRPC proxy client. tests/it/containerd.rs
// builds it in GOPATH mode against Debian's containerd sources and runs it.
package ocistoresuite

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/content"
	"github.com/containerd/containerd/content/proxy"
	"github.com/containerd/containerd/content/testsuite"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/namespaces"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

func TestContentSuite(t *testing.T) {
	testsuite.ContentSuite(t, "ocistore", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		cs, stop, err := serve(ctx, root)
		return ctx, cs, stop, err
	})
}

// A second writer of a reference that a live writer holds gets Unavailable, as with
// containerd's own store (after the server's own retries, about a second).
func TestSecondWriterIsUnavailable(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "test")
	cs, stop, err := serve(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	w1, err := cs.Writer(ctx, content.WithRef("held"))
	if err != nil {
		t.Fatal(err)
	}
	defer w1.Close()
	if _, err := w1.Write([]byte("first writer")); err != nil {
		t.Fatal(err)
	}
	w2, err := cs.Writer(ctx, content.WithRef("held"))
	if err == nil {
		w2.Close()
		t.Fatal("a second writer of a held reference was let in")
	}
	if !errdefs.IsUnavailable(err) {
		t.Fatalf("the second writer's error is not Unavailable: %v", err)
	}
}

// A client that goes away in the middle of a Write stream leaves a resumable ingest: its bytes
// are kept, a new writer resumes at their end, and the blob commits whole.
func TestClientGoneMidWriteLeavesResumableIngest(t *testing.T) {
	ctx := namespaces.WithNamespace(context.Background(), "test")
	cs, stop, err := serve(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	blob := make([]byte, 3<<20)
	for i := range blob {
		blob[i] = byte(i * 7 % 251)
	}
	dgst := digest.FromBytes(blob)
	gone, cancel := context.WithCancel(ctx)
	w, err := cs.Writer(gone, content.WithRef("vanishing"), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(blob)), Digest: dgst}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(blob[:1<<20]); err != nil {
		t.Fatal(err)
	}
	cancel() // the stream is cut, with no CloseSend and no commit
	var st content.Status
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err = cs.Status(ctx, "vanishing")
		if err == nil && st.Offset == 1<<20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ingest was not kept at 1 MiB: %+v, %v", st, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := cs.Info(ctx, dgst); !errdefs.IsNotFound(err) {
		t.Fatalf("no blob from part of the bytes: %v", err)
	}
	w, err = cs.Writer(ctx, content.WithRef("vanishing"), content.WithDescriptor(ocispec.Descriptor{Size: int64(len(blob)), Digest: dgst}))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := w.Status()
	if err != nil || ws.Offset != 1<<20 {
		t.Fatalf("the new writer resumes at 1 MiB: %+v, %v", ws, err)
	}
	if _, err := w.Write(blob[1<<20:]); err != nil {
		t.Fatal(err)
	}
	if err := w.Commit(ctx, int64(len(blob)), dgst); err != nil {
		t.Fatal(err)
	}
	got, err := content.ReadBlob(ctx, cs, ocispec.Descriptor{Digest: dgst, Size: int64(len(blob))})
	if err != nil || digest.FromBytes(got) != dgst {
		t.Fatalf("the committed blob reads back whole: %v", err)
	}
}

// serve starts `ocistore serve --containerd` on a store under root and returns containerd's
// proxy content store over its socket.
func serve(ctx context.Context, root string) (content.Store, func() error, error) {
	bin := os.Getenv("OCISTORE_BIN")
	if bin == "" {
		return nil, nil, fmt.Errorf("OCISTORE_BIN is not set")
	}
	sock := filepath.Join(root, "content.sock")
	cmd := exec.Command(bin, "--root", filepath.Join(root, "store"), "--json", "serve", "--containerd", sock)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		return cmd.Wait()
	}
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, nil, fmt.Errorf("ocistore serve did not get ready: %w", err)
	}
	dialCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(dialCtx, "passthrough:///ocistore",
		grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
	if err != nil {
		_ = stop()
		return nil, nil, err
	}
	cs := proxy.NewContentStore(contentapi.NewContentClient(conn))
	return cs, func() error {
		_ = conn.Close()
		return stop()
	}, nil
}
