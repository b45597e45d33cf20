// ctdbench: the baselines of benches/containerd.sh, built from Debian's containerd 1.6.20
// sources in GOPATH mode.
//
//	ctdbench serve ROOT SOCKET   containerd's own local content store (content/local) behind
//	                             its own gRPC content service (contentserver), on SOCKET: what
//	                             `ocistore serve --containerd` is measured against
//	ctdbench read SOCKET DIGEST  reads the whole blob through containerd's proxy client
//	                             (ReaderAt, 1 MiB reads) and prints "BYTES SECONDS"
//	ctdbench stream SOCKET DIGEST  reads the whole blob as one Read stream (offset 0, size 0:
//	                             all of it, in the server's chunks) and prints "BYTES SECONDS"
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	contentapi "github.com/containerd/containerd/api/services/content/v1"
	"github.com/containerd/containerd/content/local"
	"github.com/containerd/containerd/content/proxy"
	"github.com/containerd/containerd/namespaces"
	"github.com/containerd/containerd/services/content/contentserver"
	digest "github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: ctdbench serve ROOT SOCKET | ctdbench read|stream SOCKET DIGEST")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2], os.Args[3])
	case "read":
		err = read(os.Args[2], digest.Digest(os.Args[3]))
	case "stream":
		err = stream(os.Args[2], digest.Digest(os.Args[3]))
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctdbench:", err)
		os.Exit(1)
	}
}

func serve(root, sock string) error {
	cs, err := local.NewStore(root)
	if err != nil {
		return err
	}
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	s := grpc.NewServer(grpc.MaxRecvMsgSize(32<<20), grpc.MaxSendMsgSize(32<<20))
	contentapi.RegisterContentServer(s, contentserver.New(cs))
	fmt.Println("ready")
	return s.Serve(l)
}

func dial(ctx context.Context, sock string) (*grpc.ClientConn, error) {
	return grpc.DialContext(ctx, "passthrough:///bench", grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(32<<20)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}))
}

func stream(sock string, dgst digest.Digest) error {
	ctx := namespaces.WithNamespace(context.Background(), "bench")
	conn, err := dial(ctx, sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	start := time.Now()
	rc, err := contentapi.NewContentClient(conn).Read(ctx, &contentapi.ReadContentRequest{Digest: dgst})
	if err != nil {
		return err
	}
	var n int64
	for {
		msg, err := rc.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		n += int64(len(msg.Data))
	}
	fmt.Printf("%d %f\n", n, time.Since(start).Seconds())
	return nil
}

func read(sock string, dgst digest.Digest) error {
	ctx := namespaces.WithNamespace(context.Background(), "bench")
	conn, err := dial(ctx, sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	cs := proxy.NewContentStore(contentapi.NewContentClient(conn))
	start := time.Now()
	ra, err := cs.ReaderAt(ctx, ocispec.Descriptor{Digest: dgst})
	if err != nil {
		return err
	}
	defer ra.Close()
	buf := make([]byte, 1<<20)
	var off int64
	for off < ra.Size() {
		n, err := ra.ReadAt(buf, off)
		off += int64(n)
		if err != nil && off < ra.Size() {
			return err
		}
	}
	fmt.Printf("%d %f\n", off, time.Since(start).Seconds())
	return nil
}
