package config

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestExampleIsTheDefault keeps lacre.toml.example honest: it must parse,
// and every value it shows must be the built-in default.
func TestExampleIsTheDefault(t *testing.T) {
	c, err := Load("../lacre.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	d := Default()
	d.Path = c.Path
	// The example writes empty tables and lists; the defaults leave them nil.
	if len(c.Static.NeverEncrypt) == 0 && len(c.Static.Addresses) == 0 && len(c.Static.Domains) == 0 {
		c.Static = d.Static
	}
	if len(c.Web.Domains) == 0 {
		c.Web.Domains = d.Web.Domains
	}
	if !reflect.DeepEqual(c, d) {
		t.Errorf("lacre.toml.example differs from Default():\n file    %+v\n default %+v", c, d)
	}
}

// TestExampleListsEveryOption fails when an option is added to Config
// without documenting it in lacre.toml.example.
func TestExampleListsEveryOption(t *testing.T) {
	src, err := os.ReadFile("../lacre.toml.example")
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	checkTable(t, text, "", reflect.TypeFor[Config]())
}

// checkTable checks that every field of the struct type st (the TOML table
// named table) is shown in the example, recursing into sub-tables.
func checkTable(t *testing.T, text, table string, st reflect.Type) {
	t.Helper()
	for i := range st.NumField() {
		f := st.Field(i)
		key := f.Tag.Get("toml")
		if key == "" || key == "-" {
			continue
		}
		name := key
		if table != "" {
			name = table + "." + key
		}
		switch {
		case f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[Duration]():
			if !strings.Contains(text, "["+name+"]") {
				t.Errorf("lacre.toml.example has no [%s] table", name)
			}
			checkTable(t, text, name, f.Type)
		case f.Type.Kind() == reflect.Map:
			if !strings.Contains(text, "["+name+"]") {
				t.Errorf("lacre.toml.example has no [%s] table", name)
			}
		default:
			if !strings.Contains(text, "\n"+key+" = ") {
				t.Errorf("lacre.toml.example does not show %s", name)
			}
		}
	}
}
