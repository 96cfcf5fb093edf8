// vcsim for the appliance's vSphere tests: govmomi's vSphere simulator (simulator.VPX(): one
// datacenter DC0, a cluster DC0_C0 of three hosts, a standalone host, datastore LocalDS_0, the
// "VM Network" port group) on 127.0.0.1, plain HTTP (HTTPS with -cert and -key), with the
// credentials given. Prints one line, "URL DATASTORE_DIR", then serves until its standard
// input closes.
//
// Built offline against Debian's golang-github-vmware-govmomi-dev (GOPATH=/usr/share/gocode,
// GO111MODULE=off): see appliance-side/tests/vsphere.rs.
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
)

func main() {
	user := flag.String("user", "tether", "the user the simulator accepts")
	pass := flag.String("pass", "secret", "the password the simulator accepts")
	cert := flag.String("cert", "", "serve HTTPS with this certificate (PEM), with -key")
	key := flag.String("key", "", "the certificate's private key (PEM)")
	flag.Parse()

	m := simulator.VPX()
	m.Machine = 0 // no VMs of its own: every VM in it is one a test made
	defer m.Remove()
	if err := m.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "vcsim:", err)
		os.Exit(1)
	}
	m.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(*user, *pass)}
	if *cert != "" {
		pair, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			fmt.Fprintln(os.Stderr, "vcsim:", err)
			os.Exit(1)
		}
		m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	}
	s := m.Service.NewServer()
	defer s.Close()

	dir := ""
	for _, obj := range simulator.Map.All("Datastore") {
		dir = obj.(mo.Entity).Entity().Name
		if ds, ok := obj.(*simulator.Datastore); ok {
			dir = ds.Info.GetDatastoreInfo().Url
		}
	}
	u := *s.URL
	u.User = nil
	fmt.Printf("%s %s\n", u.String(), dir)
	_, _ = io.Copy(io.Discard, os.Stdin)
}
