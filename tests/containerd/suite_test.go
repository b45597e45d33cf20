// containerd's own content testsuite (containerd 1.6.20, content/testsuite), run over
// `ocistore serve --containerd` through containerd's gRPC proxy client. tests/containerd.rs
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
	"google.golang.org/grpc"
)

func TestContentSuite(t *testing.T) {
	bin := os.Getenv("OCISTORE_BIN")
	if bin == "" {
		t.Fatal("OCISTORE_BIN is not set")
	}
	testsuite.ContentSuite(t, "ocistore", func(ctx context.Context, root string) (context.Context, content.Store, func() error, error) {
		sock := filepath.Join(root, "content.sock")
		cmd := exec.Command(bin, "--root", filepath.Join(root, "store"), "--json", "serve", "--containerd", sock)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			return ctx, nil, nil, err
		}
		if err := cmd.Start(); err != nil {
			return ctx, nil, nil, err
		}
		stop := func() error {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			return cmd.Wait()
		}
		if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return ctx, nil, nil, fmt.Errorf("ocistore serve did not get ready: %w", err)
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
			return ctx, nil, nil, err
		}
		cs := proxy.NewContentStore(contentapi.NewContentClient(conn))
		return ctx, cs, func() error {
			_ = conn.Close()
			return stop()
		}, nil
	})
}
